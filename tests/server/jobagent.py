"""Helpers for job tests over the in-process server: application specs with jobs, a fake
agent that starts job instances and ends them with the exit code a test chooses, and reads
of the run history. Time is the harness's `FakeClock`; nothing sleeps."""

from __future__ import annotations

from typing import Any

from corral.testing.server import ServerHarness
from tests.server.rollouts import NODE

__all__ = ["NODE", "exit_with", "job", "job_instances", "jobs_app", "pass_", "runs",
           "start", "stop_requested"]


def job(**fields: Any) -> dict[str, Any]:
    return {"command": ["sh", "-c", "true"], "resources": {"cpu": 0.1, "memory": "32MiB"},
            **fields}


def jobs_app(name: str = "shop", **jobs: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "jobs": jobs}


async def pass_(srv: ServerHarness, seconds: float = 0.0) -> None:
    """Advance the fake clock, heartbeat (a registration renews the node's lease across
    time jumps) and run the controllers."""
    if seconds:
        await srv.clock.advance(seconds)
    await srv.client.register_node(NODE)
    await srv.reconcile()


async def job_instances(srv: ServerHarness, job: str | None = None, *, app: str = "shop",
                        all: bool = True) -> list[dict[str, Any]]:
    found = await srv.client.list_instances(app=app, service=job, all=all)
    return sorted((i for i in found if i["kind"] == "job"),
                  key=lambda i: (i["run"], i["slot"], i["created_at"]))


async def start(srv: ServerHarness, job: str | None = None, *, app: str = "shop"
                ) -> list[str]:
    """What the agent does with placed job instances: start them. Their ids."""
    started = []
    for inst in await job_instances(srv, job, app=app, all=False):
        if inst["state"] == "scheduled" and inst["desired"] == "run":
            iid, node = inst["id"], inst["node"]
            await srv.client.report_status(iid, {"node": node, "state": "starting"})
            await srv.client.report_status(iid, {"node": node, "state": "running", "pid": 9,
                                                 "started_at": srv.clock.now()})
            started.append(iid)
    return started


async def exit_with(srv: ServerHarness, job: str, code: int, *, app: str = "shop",
                    limit: int | None = None) -> list[str]:
    """The running instances of `job` (the first `limit`) end with `code`, reported as a
    job's instance is: one final `exited` (0) or `failed`. Their ids."""
    running = [i for i in await job_instances(srv, job, app=app, all=False)
               if i["state"] == "running"][:limit]
    for inst in running:
        await srv.client.report_status(inst["id"], {
            "node": inst["node"], "state": "exited" if code == 0 else "failed",
            "exit_code": code, "reason": f"exited with code {code}"})
    return [i["id"] for i in running]


async def stop_requested(srv: ServerHarness, *, app: str = "shop") -> list[str]:
    done = []
    for inst in await job_instances(srv, app=app, all=False):
        if inst["desired"] == "stop" and inst["state"] not in ("stopped", "lost"):
            await srv.client.report_status(inst["id"], {"node": inst["node"],
                                                        "state": "stopped",
                                                        "reason": "stop requested"})
            done.append(inst["id"])
    return done


async def runs(srv: ServerHarness, job: str, *, app: str = "shop") -> list[dict[str, Any]]:
    """The job's runs, oldest first."""
    return list(reversed(await srv.client.job_runs(app, job, limit=1000)))
