"""`corral apply`/`rollback`/`restart` follow deployments (`cli/follow.py`): driven here
against the in-process server while a task plays the controllers, the agents and time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from corral.cli.follow import Outcome, follow
from corral.testing.server import ServerHarness, server_harness
from tests.server.rollouts import NODE, agents, passes, settle, spec


@pytest.fixture
async def srv(tmp_path: Path) -> Any:
    async with server_harness(tmp_path) as s:
        await s.client.register_node(NODE)
        yield s


@contextlib.asynccontextmanager
async def cluster_running(srv: ServerHarness,
                          healthy: Callable[[dict[str, Any]], bool] = passes
                          ) -> AsyncIterator[None]:
    async def play() -> None:
        while True:
            await srv.reconcile(rounds=1)
            await agents(srv, healthy)
            await srv.clock.advance(1)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(play())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def apply_and_follow(srv: ServerHarness, body: dict[str, Any],
                           healthy: Callable[[dict[str, Any]], bool] = passes) -> Outcome:
    result = await srv.client.apply(body)
    async with cluster_running(srv, healthy):
        return await follow(srv.client, "shop", "default", result["deployments"],
                            timeout=30, since=0, show=False, poll=0.01)


async def test_follows_a_rollout_to_its_end(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    outcome = await apply_and_follow(srv, spec("2"))
    assert outcome.ok and not outcome.problems, outcome.problems
    assert [d["status"] for d in outcome.deployments] == ["successful"]
    assert outcome.app["services"][0]["ready"] == 3


async def test_a_failed_deployment_fails_with_its_reason_and_the_revert(
        srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", auto_revert=True))
    await settle(srv)
    outcome = await apply_and_follow(srv, spec("2", auto_revert=True, healthy_deadline="5s"),
                                     lambda inst: bool(inst["version"] == 1))
    assert not outcome.ok
    [problem] = outcome.problems
    assert "web: deployment" in problem and "(version 2) failed: instance" in problem
    assert "not healthy within healthy_deadline 5s" in problem
    assert "auto-revert started: version 3" in problem


async def test_canaries_waiting_for_promotion_end_the_wait_with_a_note(
        srv: ServerHarness) -> None:
    await srv.client.apply(spec("1", canary=1))
    await settle(srv)
    outcome = await apply_and_follow(srv, spec("2", canary=1))
    assert outcome.ok
    [note] = outcome.notes
    assert "1 canaries of version 2 ready" in note and "deployment promote shop/web" in note


async def test_a_scale_is_followed_through_its_instances(srv: ServerHarness) -> None:
    await srv.client.apply(spec("1"))
    await settle(srv)
    outcome = await apply_and_follow(srv, spec("1", instances=5))
    assert outcome.ok and outcome.deployments == []
    assert outcome.app["services"][0]["ready"] == 5


async def test_an_instance_that_cannot_be_placed_fails_the_wait(srv: ServerHarness) -> None:
    huge = spec("1")
    huge["services"]["web"]["resources"] = {"memory": "64GiB"}
    outcome = await apply_and_follow(srv, huge)
    assert not outcome.ok and len(outcome.problems) == 3
    assert all(": pending: " in p and "memory" in p for p in outcome.problems), \
        outcome.problems


async def test_a_failing_new_service_fails_the_wait_at_once(srv: ServerHarness) -> None:
    result = await srv.client.apply(spec("1"))
    await srv.reconcile()
    [inst, *_] = await srv.client.list_instances()
    for state in ("starting", "failed"):
        await srv.client.report_status(inst["id"], {"node": "n1", "state": state,
                                                    "reason": "exited with code 3"})
    outcome = await follow(srv.client, "shop", "default", result["deployments"], timeout=30,
                           since=0, show=False, poll=0.01)
    assert not outcome.ok
    assert outcome.problems == [f"web/{inst['id']}: failed: exited with code 3"]


def test_an_unplaceable_instance_waits_while_an_old_one_frees_its_resources() -> None:
    from corral.cli.follow import _instance_problems

    def inst(iid: str, desired: str, state: str, reason: str = "") -> dict[str, Any]:
        return {"id": iid, "service": "web", "desired": desired, "state": state,
                "reason": reason, "updated_at": 10.0}

    full = inst("new", "run", "pending", "no node can fit 0.2 cpu")
    # The old instance is in its shutdown_delay: once stopped, the new one fits.
    draining = {"instances": [full, inst("old", "stop", "healthy")]}
    assert _instance_problems(draining, set(), since=0) == []
    # Nothing will free room: the wait fails at once, saying why.
    stuck = {"instances": [full, inst("old", "stop", "stopped")]}
    assert _instance_problems(stuck, set(), since=0) == [
        "web/new: pending: no node can fit 0.2 cpu"]
