"""Helpers for rollout tests over the in-process server: a spec with a version marker and
a health check, fake agents that start, check and stop instances, and reads of the
deployment records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.model.deployment import Deployment
from corral.server import keys
from corral.testing.server import ServerHarness

__all__ = ["NODE", "agents", "deployments", "live", "passes", "roll", "settle", "spec"]

NODE = {"name": "n1", "address": "10.0.0.1", "capacity": {"cpu": 8.0, "memory": 16 << 30},
        "port_range": [20000, 20100], "drivers": {"process": ""}}
CHECK = {"http": "/healthz", "interval": "1s", "grace": "0s"}


def spec(version: str, *, instances: int = 3, **update: Any) -> dict[str, Any]:
    return {"name": "shop", "services": {"web": {
        "instances": instances, "command": ["python3", "app.py"], "env": {"V": version},
        "ports": [{"name": "http"}], "health": CHECK,
        "update": {"max_parallel": 1, "max_surge": 1, "min_healthy_time": "2s",
                   "healthy_deadline": "30s", "progress_deadline": "5m", **update}}}}


def passes(inst: dict[str, Any]) -> bool:
    return True


async def agents(srv: ServerHarness, healthy: Callable[[dict[str, Any]], bool] = passes
                 ) -> None:
    """What the node's agent would do: start what was placed, pass or fail its health
    check (`healthy`), carry out stop requests; and heartbeat (a registration renews the
    node's lease) so that fake time jumps do not take the node down."""
    await srv.client.register_node(NODE)
    for inst in await srv.client.list_instances():
        iid, node = inst["id"], inst["node"]
        if inst["desired"] == "stop":
            await srv.client.report_status(iid, {"node": node, "state": "stopped"})
            continue
        if inst["state"] == "scheduled":
            await srv.client.report_status(iid, {"node": node, "state": "starting"})
            await srv.client.report_status(iid, {"node": node, "state": "running", "pid": 7,
                                                 "started_at": srv.clock.now()})
            inst["state"] = "running"
        if inst["state"] == "running" and healthy(inst):
            await srv.client.report_status(iid, {"node": node, "state": "healthy",
                                                 "health": "healthy"})


async def deployments(srv: ServerHarness) -> list[Deployment]:
    items, _ = await srv.ctx.records.scan(Deployment, keys.DEPLOYMENTS)
    return sorted((i.record for i in items), key=lambda d: (d.version, d.generation))


async def live(srv: ServerHarness) -> list[dict[str, Any]]:
    return [i for i in await srv.client.list_instances() if i["desired"] == "run"]


async def settle(srv: ServerHarness, healthy: Callable[[dict[str, Any]], bool] = passes
                 ) -> None:
    """Start version 1 and let it become healthy."""
    await srv.reconcile()
    await agents(srv, healthy)
    await srv.clock.advance(3)
    await srv.reconcile()


async def roll(srv: ServerHarness, healthy: Callable[[dict[str, Any]], bool] = passes,
               rounds: int = 60) -> Deployment:
    """Reconcile, let the agents act and a second pass, until the newest deployment is
    final (or `rounds` run out); returns it."""
    for _ in range(rounds):
        await srv.reconcile()
        newest = (await deployments(srv))[-1]
        if newest.final:
            return newest
        await agents(srv, healthy)
        await srv.clock.advance(1)
    return (await deployments(srv))[-1]
