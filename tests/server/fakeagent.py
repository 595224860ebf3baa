"""Helpers for dependency and catalog tests over the in-process server: specs of services
that depend on each other, and a fake agent that moves the instances of one service at a
time (so a test decides when a dependency becomes healthy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corral.testing.server import ServerHarness
from tests.server.rollouts import NODE

__all__ = ["NODE", "app", "bring", "live", "stop_requested", "svc"]

CHECK = {"tcp": "main", "interval": "1s", "grace": "0s"}


def svc(*, instances: int = 1, deps: Sequence[str] = (), check: bool = True,
        ports: Sequence[str] = ("main",), **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "instances": instances, "command": ["sleep", "1000"],
        "ports": [{"name": p} for p in ports], "depends_on": list(deps),
        "update": {"min_healthy_time": "0s"}, **extra}
    if check and ports:
        spec["health"] = {**CHECK, "tcp": ports[0]}
    return spec


def app(name: str = "shop", namespace: str = "default", **services: dict[str, Any]
        ) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "services": services}


async def live(srv: ServerHarness, service: str | None = None, app: str = "shop",
               namespace: str = "default") -> list[dict[str, Any]]:
    """Instances wanted running, by slot."""
    found = await srv.client.list_instances(app=app, service=service, namespace=namespace)
    return [i for i in found if i["desired"] == "run"]


async def bring(srv: ServerHarness, service: str, state: str = "healthy", *,
                app: str = "shop", namespace: str = "default", limit: int | None = None
                ) -> list[dict[str, Any]]:
    """What the node's agent would do for the placed instances of one service that are
    wanted running (the first `limit` of them by slot): start them and report `state`
    (`running`, `healthy`, `unhealthy`). Returns them as they are afterwards."""
    await srv.client.register_node(NODE)  # renews the lease across fake time jumps
    for inst in (await live(srv, service, app, namespace))[:limit]:
        iid, node, now = inst["id"], inst["node"], inst["state"]
        if node is None:
            continue
        if now == "scheduled":
            await srv.client.report_status(iid, {"node": node, "state": "starting"})
            now = "starting"
        if now == "starting":
            await srv.client.report_status(iid, {
                "node": node, "state": "running", "pid": 7, "started_at": srv.clock.now(),
                "health": "none" if state == "running" else "unknown"})
            now = "running"
        if state != now and state != "running":
            await srv.client.report_status(iid, {"node": node, "state": state,
                                                 "health": state})
    return await live(srv, service, app, namespace)


async def stop_requested(srv: ServerHarness, service: str | None = None, *,
                         app: str = "shop") -> list[str]:
    """Report `stopped` for every instance asked to stop (of `service`); their ids."""
    done = []
    for inst in await srv.client.list_instances(app=app, service=service):
        if inst["desired"] == "stop" and inst["state"] not in ("stopped", "lost"):
            await srv.client.report_status(inst["id"], {"node": inst["node"],
                                                        "state": "stopped"})
            done.append(inst["id"])
    return done
